//! The models [`check_records`](crate::history::check_records) checks a history with: the
//! two key/value models of [`models`](crate::models), over operations that borrow their
//! strings from the records instead of copying them, and with states that are cheap to keep.
//!
//! They share every rule and every sentence with [`KvModel`](crate::models::KvModel) and
//! [`VersionedKvModel`](crate::models::VersionedKvModel) (the `*_step`, `describe_*` and
//! `explain_illegal_*` functions of `models`), so checking records gives exactly the verdict
//! and the explanation that checking the same operations with the public models gives; only
//! the cost differs:
//!
//! - No string of a record is copied to build the operations (histories of long appended
//!   values carry hundreds of megabytes of answers).
//! - A 2024 value is a [`SharedValue`]: a prefix of a buffer that appends extend in place, so
//!   a read keeps the value for free and an append costs the appended text, where a `String`
//!   state costs a copy of the whole value per operation.
//! - A 2025 value borrows the put's string from its record.

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::rc::Rc;

use crate::history::{HistoryOp, HistoryRecord};
use crate::models::{
    describe_kv, describe_kv_state, describe_versioned, describe_versioned_state,
    explain_illegal_kv, explain_illegal_versioned, key_label, kv_read_only, kv_step,
    partition_by_key, versioned_read_only, versioned_step, KvEffect, KvError, KvInputRef, KvOp,
    VersionedEffect, VersionedInputRef, VersionedOp, VersionedOutputRef,
};
use crate::{Model, Operation};

/// A 2024 operation of a record. The answer is the `output` string.
pub(crate) fn kv_operation(record: &HistoryRecord) -> Operation<KvInputRef<'_>, &str> {
    let op = match record.op {
        HistoryOp::Get => KvOp::Get,
        HistoryOp::Put => KvOp::Put,
        HistoryOp::Append => KvOp::Append,
    };
    Operation {
        client: record.client,
        input: KvInputRef {
            op,
            key: &record.key,
            value: &record.value,
        },
        output: record.output.as_deref(),
        call: record.call,
        ret: record.ret,
    }
}

/// A 2025 operation of a validated record of a versioned history (no appends).
pub(crate) fn versioned_operation(
    record: &HistoryRecord,
) -> Operation<VersionedInputRef<'_>, VersionedOutputRef<'_>> {
    let (input, output) = match record.op {
        HistoryOp::Get => {
            let observed =
                record.output.is_some() || record.version.is_some() || record.error.is_some();
            let output = observed.then(|| VersionedOutputRef {
                value: record.output.as_deref().unwrap_or(""),
                version: record.version.unwrap_or(0),
                error: record.error.unwrap_or(KvError::Ok),
            });
            let input = VersionedInputRef {
                op: VersionedOp::Get,
                key: &record.key,
                value: "",
                version: 0,
            };
            (input, output)
        }
        HistoryOp::Put => {
            let input = VersionedInputRef {
                op: VersionedOp::Put,
                key: &record.key,
                value: &record.value,
                version: record.version.expect("a versioned put has a version"),
            };
            let output = record.error.map(|error| VersionedOutputRef {
                value: "",
                version: 0,
                error,
            });
            (input, output)
        }
        HistoryOp::Append => unreachable!("a versioned history has no appends"),
    };
    Operation {
        client: record.client,
        input,
        output,
        call: record.call,
        ret: record.ret,
    }
}

/// A string value: the first `len` bytes of a buffer that only ever grows at its end.
///
/// Appending to the value that ends where the buffer ends extends the buffer in place; the
/// values that share it are prefixes, which that does not change. Appending to any other
/// value (one a later append already extended, after the search backtracked) copies it into
/// a buffer of its own first.
#[derive(Clone)]
pub(crate) struct SharedValue {
    buffer: Rc<RefCell<String>>,
    len: usize,
}

impl SharedValue {
    fn new(value: &str) -> SharedValue {
        SharedValue {
            buffer: Rc::new(RefCell::new(value.to_string())),
            len: value.len(),
        }
    }

    /// Calls `f` with the value.
    fn with<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(&self.buffer.borrow()[..self.len])
    }

    fn appended(&self, text: &str) -> SharedValue {
        let mut buffer = self.buffer.borrow_mut();
        if buffer.len() == self.len {
            buffer.push_str(text);
            return SharedValue {
                buffer: Rc::clone(&self.buffer),
                len: buffer.len(),
            };
        }
        let mut value = String::with_capacity(self.len + text.len());
        value.push_str(&buffer[..self.len]);
        value.push_str(text);
        SharedValue {
            len: value.len(),
            buffer: Rc::new(RefCell::new(value)),
        }
    }
}

impl PartialEq for SharedValue {
    fn eq(&self, other: &SharedValue) -> bool {
        self.len == other.len
            && (Rc::ptr_eq(&self.buffer, &other.buffer)
                || self.with(|value| other.with(|other| value == other)))
    }
}

impl Eq for SharedValue {}

impl Hash for SharedValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.with(|value| value.hash(state));
    }
}

impl fmt::Debug for SharedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with(|value| fmt::Debug::fmt(value, f))
    }
}

/// [`KvModel`](crate::models::KvModel) over records that live for `'a`.
pub(crate) struct KvRecordModel<'a>(PhantomData<&'a HistoryRecord>);

impl KvRecordModel<'_> {
    pub(crate) fn new() -> Self {
        KvRecordModel(PhantomData)
    }
}

impl<'a> Model for KvRecordModel<'a> {
    type State = SharedValue;
    type Input = KvInputRef<'a>;
    type Output = &'a str;

    fn init(&self) -> SharedValue {
        SharedValue::new("")
    }

    fn step(
        &self,
        state: &SharedValue,
        input: &KvInputRef<'a>,
        output: Option<&&'a str>,
    ) -> Option<SharedValue> {
        let effect = state.with(|value| kv_step(value, *input, output.copied()))?;
        Some(match effect {
            KvEffect::Keep => state.clone(),
            KvEffect::Replace(value) => SharedValue::new(value),
            KvEffect::Append(text) => state.appended(text),
        })
    }

    fn is_read_only(&self, input: &KvInputRef<'a>, output: Option<&&'a str>) -> bool {
        kv_read_only(*input, output.copied())
    }

    fn partition(&self, history: &[Operation<KvInputRef<'a>, &'a str>]) -> Vec<Vec<usize>> {
        partition_by_key(history, |input| input.key)
    }

    fn describe(&self, input: &KvInputRef<'a>, output: Option<&&'a str>) -> String {
        describe_kv(*input, output.copied())
    }

    fn describe_state(&self, state: &SharedValue) -> String {
        state.with(describe_kv_state)
    }

    fn explain_illegal(
        &self,
        state: &SharedValue,
        input: &KvInputRef<'a>,
        output: Option<&&'a str>,
    ) -> String {
        state.with(|value| explain_illegal_kv(value, *input, output.copied()))
    }

    fn describe_partition(
        &self,
        history: &[Operation<KvInputRef<'a>, &'a str>],
        group: &[usize],
    ) -> Option<String> {
        key_label(history, group, |input| input.key)
    }
}

/// The state of one key in the 2025 model, its value borrowed from the put that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct VersionedRecordState<'a> {
    value: &'a str,
    version: u64,
}

/// [`VersionedKvModel`](crate::models::VersionedKvModel) over records that live for `'a`.
pub(crate) struct VersionedRecordModel<'a>(PhantomData<&'a HistoryRecord>);

impl VersionedRecordModel<'_> {
    pub(crate) fn new() -> Self {
        VersionedRecordModel(PhantomData)
    }
}

impl<'a> Model for VersionedRecordModel<'a> {
    type State = VersionedRecordState<'a>;
    type Input = VersionedInputRef<'a>;
    type Output = VersionedOutputRef<'a>;

    fn init(&self) -> VersionedRecordState<'a> {
        VersionedRecordState {
            value: "",
            version: 0,
        }
    }

    fn step(
        &self,
        state: &VersionedRecordState<'a>,
        input: &VersionedInputRef<'a>,
        output: Option<&VersionedOutputRef<'a>>,
    ) -> Option<VersionedRecordState<'a>> {
        let effect = versioned_step(state.value, state.version, *input, output.copied())?;
        Some(match effect {
            VersionedEffect::Keep => state.clone(),
            VersionedEffect::Set(value) => VersionedRecordState {
                value,
                version: state.version + 1,
            },
        })
    }

    fn is_read_only(
        &self,
        input: &VersionedInputRef<'a>,
        output: Option<&VersionedOutputRef<'a>>,
    ) -> bool {
        versioned_read_only(*input, output.copied())
    }

    fn partition(
        &self,
        history: &[Operation<VersionedInputRef<'a>, VersionedOutputRef<'a>>],
    ) -> Vec<Vec<usize>> {
        partition_by_key(history, |input| input.key)
    }

    fn describe(
        &self,
        input: &VersionedInputRef<'a>,
        output: Option<&VersionedOutputRef<'a>>,
    ) -> String {
        describe_versioned(*input, output.copied())
    }

    fn describe_state(&self, state: &VersionedRecordState<'a>) -> String {
        describe_versioned_state(state.value, state.version)
    }

    fn explain_illegal(
        &self,
        state: &VersionedRecordState<'a>,
        input: &VersionedInputRef<'a>,
        output: Option<&VersionedOutputRef<'a>>,
    ) -> String {
        explain_illegal_versioned(state.value, state.version, *input, output.copied())
    }

    fn describe_partition(
        &self,
        history: &[Operation<VersionedInputRef<'a>, VersionedOutputRef<'a>>],
        group: &[usize],
    ) -> Option<String> {
        key_label(history, group, |input| input.key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use super::*;

    fn hash(value: &SharedValue) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    fn text(value: &SharedValue) -> String {
        value.with(str::to_string)
    }

    #[test]
    fn appends_share_a_buffer_until_the_values_branch() {
        let empty = SharedValue::new("");
        let x = empty.appended("x");
        let xy = x.appended("y");
        assert!(Rc::ptr_eq(&empty.buffer, &xy.buffer), "appended in place");
        // x no longer ends where the buffer does: appending to it copies.
        let xz = x.appended("z");
        assert!(!Rc::ptr_eq(&x.buffer, &xz.buffer));
        let xzw = xz.appended("w");
        assert!(Rc::ptr_eq(&xz.buffer, &xzw.buffer));
        let values = [&empty, &x, &xy, &xz, &xzw].map(text);
        assert_eq!(values, ["", "x", "xy", "xz", "xzw"]);
    }

    #[test]
    fn shared_values_compare_and_hash_by_content() {
        let xy = SharedValue::new("x").appended("y");
        let also_xy = SharedValue::new("xy");
        let xz = SharedValue::new("x").appended("z");
        assert_eq!(xy, also_xy);
        assert_eq!(hash(&xy), hash(&also_xy));
        assert_ne!(xy, xz);
        assert_ne!(xy, SharedValue::new("x"));
        assert_eq!(format!("{xy:?}"), format!("{:?}", "xy"));
    }

    #[test]
    fn the_record_models_step_like_the_public_ones() {
        let model = KvRecordModel::new();
        let append = |value| KvInputRef {
            op: KvOp::Append,
            key: "k",
            value,
        };
        let get = KvInputRef {
            op: KvOp::Get,
            key: "k",
            value: "",
        };
        let x = model.step(&model.init(), &append("x"), Some(&"")).unwrap();
        assert!(model.step(&x, &append("y"), Some(&"")).is_none());
        let xy = model.step(&x, &append("y"), None).unwrap();
        assert_eq!(text(&model.step(&xy, &get, Some(&"xy")).unwrap()), "xy");
        assert!(model.step(&xy, &get, Some(&"x")).is_none());
        assert_eq!(
            model.explain_illegal(&xy, &get, Some(&"x")),
            crate::models::KvModel.explain_illegal(
                &"xy".to_string(),
                &crate::models::KvInput::get("k"),
                Some(&crate::models::KvOutput::new("x"))
            )
        );
    }
}
