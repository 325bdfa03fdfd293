//! The 6.5840 key/value models, exactly as the labs' porcupine models define them (see
//! `shared/spec/kvsrv.md` Part C and `network.md` §8).
//!
//! Both partition a history by key (partitions in sorted key order) and keep the state of one
//! key. An operation whose answer was not observed (`output == None`, e.g. one that never
//! returned) is accepted in any state, with the effect it has when it succeeds.
//!
//! - [`KvModel`] (2024 kvsrv): a key holds a string, initially `""`. Get must return it; Put
//!   replaces it; Append returns the old value (the model's op 3) and appends. An Append with
//!   no observed answer behaves as the model's op 2 (append, any answer).
//! - [`VersionedKvModel`] (2025 kvsrv1): a key holds (value, version), initially `("", 0)`.
//!   Get must return the value (the returned version and error are not checked); Put is
//!   conditional on the version, and `ErrMaybe` allows both outcomes.
//!
//! Read-only operations ([`Model::is_read_only`], which lets the search skip reordering
//! them): every Get of either model, and a 2025 Put that answered `ErrVersion` or `ErrNoKey`.
//! A Put that answered OK or `ErrMaybe`, or whose answer was not observed, is not, nor is any
//! 2024 Put or Append.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Model, Operation};

/// Groups the operations by key, in sorted key order.
pub(crate) fn partition_by_key<I, O>(
    history: &[Operation<I, O>],
    key: impl Fn(&I) -> &str,
) -> Vec<Vec<usize>> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(key(&op.input)).or_default().push(index);
    }
    by_key.into_values().collect()
}

pub(crate) fn key_label<I, O>(
    history: &[Operation<I, O>],
    group: &[usize],
    key: impl Fn(&I) -> &str,
) -> Option<String> {
    group
        .first()
        .map(|&index| format!("key {:?}", key(&history[index].input)))
}

/// A 2024 key/value operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Get,
    Put,
    /// Append that returns the value before the append.
    Append,
}

/// The input of a 2024 key/value operation. `value` is empty for a Get.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvInput {
    pub op: KvOp,
    pub key: String,
    pub value: String,
}

impl KvInput {
    pub fn get(key: impl Into<String>) -> KvInput {
        KvInput {
            op: KvOp::Get,
            key: key.into(),
            value: String::new(),
        }
    }

    pub fn put(key: impl Into<String>, value: impl Into<String>) -> KvInput {
        KvInput {
            op: KvOp::Put,
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn append(key: impl Into<String>, value: impl Into<String>) -> KvInput {
        KvInput {
            op: KvOp::Append,
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The answer of a 2024 key/value operation: the value a Get read, or the old value an Append
/// replaced (empty for a Put).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvOutput {
    pub value: String,
}

impl KvOutput {
    pub fn new(value: impl Into<String>) -> KvOutput {
        KvOutput {
            value: value.into(),
        }
    }
}

/// A 2024 operation's input, borrowed: what [`KvModel`] and the history checker's model of
/// borrowed records share.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvInputRef<'a> {
    pub op: KvOp,
    pub key: &'a str,
    pub value: &'a str,
}

impl KvInput {
    pub(crate) fn view(&self) -> KvInputRef<'_> {
        KvInputRef {
            op: self.op,
            key: &self.key,
            value: &self.value,
        }
    }
}

/// What a legal 2024 operation does to the value.
pub(crate) enum KvEffect<'a> {
    Keep,
    Replace(&'a str),
    Append(&'a str),
}

/// The 2024 model's step on borrowed parts: the effect of `input` answering `output` (None =
/// not observed) when the value is `state`, or None if that answer is impossible.
pub(crate) fn kv_step<'a>(
    state: &str,
    input: KvInputRef<'a>,
    output: Option<&str>,
) -> Option<KvEffect<'a>> {
    // An unobserved answer fits any state.
    let answer_fits = output.is_none_or(|output| output == state);
    match input.op {
        KvOp::Get => answer_fits.then_some(KvEffect::Keep),
        KvOp::Put => Some(KvEffect::Replace(input.value)),
        KvOp::Append => answer_fits.then_some(KvEffect::Append(input.value)),
    }
}

/// [`KvModel::is_read_only`] on borrowed parts: a Get, whatever it answered (a Put or an
/// Append changes the value in some state).
pub(crate) fn kv_read_only(input: KvInputRef<'_>, _output: Option<&str>) -> bool {
    input.op == KvOp::Get
}

/// [`KvModel::describe`] on borrowed parts.
pub(crate) fn describe_kv(input: KvInputRef<'_>, output: Option<&str>) -> String {
    let answer = match output {
        Some(output) => format!("{output:?}"),
        None => "?".to_string(),
    };
    match input.op {
        KvOp::Get => format!("get({:?}) -> {answer}", input.key),
        KvOp::Put => format!("put({:?}, {:?})", input.key, input.value),
        KvOp::Append => format!("append({:?}, {:?}) -> {answer}", input.key, input.value),
    }
}

/// [`KvModel::describe_state`] on a borrowed value.
pub(crate) fn describe_kv_state(state: &str) -> String {
    format!("{state:?}")
}

/// [`KvModel::explain_illegal`] on borrowed parts.
pub(crate) fn explain_illegal_kv(
    state: &str,
    input: KvInputRef<'_>,
    output: Option<&str>,
) -> String {
    let returned = output.unwrap_or("");
    match input.op {
        KvOp::Get => format!(
            "get {:?} returned {returned:?} but the value was {state:?}",
            input.key
        ),
        KvOp::Append => format!(
            "append {:?} to {:?} returned old value {returned:?} but the value was {state:?}",
            input.value, input.key
        ),
        KvOp::Put => format!("put {:?} is always possible", input.key),
    }
}

/// The 2024 key/value model (`models.KvModel`, with Append as op 3). State: the value of one
/// key.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = String;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvInput, output: Option<&KvOutput>) -> Option<String> {
        let output = output.map(|output| output.value.as_str());
        kv_step(state, input.view(), output).map(|effect| match effect {
            KvEffect::Keep => state.clone(),
            KvEffect::Replace(value) => value.to_string(),
            KvEffect::Append(value) => format!("{state}{value}"),
        })
    }

    fn is_read_only(&self, input: &KvInput, output: Option<&KvOutput>) -> bool {
        kv_read_only(input.view(), output.map(|output| output.value.as_str()))
    }

    fn partition(&self, history: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        partition_by_key(history, |input| &input.key)
    }

    fn describe(&self, input: &KvInput, output: Option<&KvOutput>) -> String {
        describe_kv(input.view(), output.map(|output| output.value.as_str()))
    }

    fn describe_state(&self, state: &String) -> String {
        describe_kv_state(state)
    }

    fn explain_illegal(
        &self,
        state: &String,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> String {
        explain_illegal_kv(
            state,
            input.view(),
            output.map(|output| output.value.as_str()),
        )
    }

    fn describe_partition(
        &self,
        history: &[Operation<KvInput, KvOutput>],
        group: &[usize],
    ) -> Option<String> {
        key_label(history, group, |input| &input.key)
    }
}

/// The `Err` of a 2025 kvsrv1 reply, as the clerk returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvError {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "ErrNoKey")]
    NoKey,
    #[serde(rename = "ErrVersion")]
    Version,
    /// The clerk resent a Put and got `ErrVersion`: an earlier attempt may have applied.
    #[serde(rename = "ErrMaybe")]
    Maybe,
}

impl KvError {
    /// The Go name: `OK`, `ErrNoKey`, `ErrVersion`, `ErrMaybe`.
    pub fn name(self) -> &'static str {
        match self {
            KvError::Ok => "OK",
            KvError::NoKey => "ErrNoKey",
            KvError::Version => "ErrVersion",
            KvError::Maybe => "ErrMaybe",
        }
    }

    /// The inverse of [`KvError::name`].
    pub fn from_name(name: &str) -> Option<KvError> {
        [
            KvError::Ok,
            KvError::NoKey,
            KvError::Version,
            KvError::Maybe,
        ]
        .into_iter()
        .find(|error| error.name() == name)
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A 2025 key/value operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionedOp {
    Get,
    /// Put that succeeds only if `version` is the key's current version.
    Put,
}

/// The input of a 2025 key/value operation. `value` and `version` are unused by a Get.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionedInput {
    pub op: VersionedOp,
    pub key: String,
    pub value: String,
    pub version: u64,
}

impl VersionedInput {
    pub fn get(key: impl Into<String>) -> VersionedInput {
        VersionedInput {
            op: VersionedOp::Get,
            key: key.into(),
            value: String::new(),
            version: 0,
        }
    }

    pub fn put(key: impl Into<String>, value: impl Into<String>, version: u64) -> VersionedInput {
        VersionedInput {
            op: VersionedOp::Put,
            key: key.into(),
            value: value.into(),
            version,
        }
    }
}

/// The answer of a 2025 key/value operation: a Get's value, version and error; a Put's error
/// (value and version unused).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionedOutput {
    pub value: String,
    pub version: u64,
    pub error: KvError,
}

impl VersionedOutput {
    pub fn get(value: impl Into<String>, version: u64, error: KvError) -> VersionedOutput {
        VersionedOutput {
            value: value.into(),
            version,
            error,
        }
    }

    pub fn put(error: KvError) -> VersionedOutput {
        VersionedOutput {
            value: String::new(),
            version: 0,
            error,
        }
    }
}

/// The state of one key in the 2025 model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionedState {
    pub value: String,
    pub version: u64,
}

/// A 2025 operation's input, borrowed: what [`VersionedKvModel`] and the history checker's
/// model of borrowed records share.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VersionedInputRef<'a> {
    pub op: VersionedOp,
    pub key: &'a str,
    pub value: &'a str,
    pub version: u64,
}

impl VersionedInput {
    pub(crate) fn view(&self) -> VersionedInputRef<'_> {
        VersionedInputRef {
            op: self.op,
            key: &self.key,
            value: &self.value,
            version: self.version,
        }
    }
}

/// A 2025 operation's answer, borrowed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VersionedOutputRef<'a> {
    pub value: &'a str,
    pub version: u64,
    pub error: KvError,
}

impl VersionedOutput {
    pub(crate) fn view(&self) -> VersionedOutputRef<'_> {
        VersionedOutputRef {
            value: &self.value,
            version: self.version,
            error: self.error,
        }
    }
}

/// What a legal 2025 operation does to the key.
pub(crate) enum VersionedEffect<'a> {
    Keep,
    /// The value becomes this, and the version goes up by one.
    Set(&'a str),
}

/// The 2025 model's step on borrowed parts: the effect of `input` answering `output` (None =
/// not observed) when the key holds (`value`, `version`), or None if that is impossible.
pub(crate) fn versioned_step<'a>(
    value: &str,
    version: u64,
    input: VersionedInputRef<'a>,
    output: Option<VersionedOutputRef<'_>>,
) -> Option<VersionedEffect<'a>> {
    match input.op {
        VersionedOp::Get => output
            .is_none_or(|output| output.value == value)
            .then_some(VersionedEffect::Keep),
        VersionedOp::Put => {
            let applies = input.version == version;
            let legal = match output.map(|output| output.error) {
                None | Some(KvError::Maybe) => true,
                Some(KvError::Ok) => applies,
                Some(KvError::Version) => !applies,
                Some(KvError::NoKey) => false,
            };
            legal.then_some(match applies {
                true => VersionedEffect::Set(input.value),
                false => VersionedEffect::Keep,
            })
        }
    }
}

/// [`VersionedKvModel::is_read_only`] on borrowed parts: a Get, whatever it answered, and a
/// Put that answered a definite failure: `ErrVersion` (legal only where it does not apply,
/// and then it keeps the state) or `ErrNoKey` (legal nowhere). Not a Put that answered OK,
/// `ErrMaybe` or nothing: each of those applies in some state.
pub(crate) fn versioned_read_only(
    input: VersionedInputRef<'_>,
    output: Option<VersionedOutputRef<'_>>,
) -> bool {
    match input.op {
        VersionedOp::Get => true,
        VersionedOp::Put => matches!(
            output.map(|output| output.error),
            Some(KvError::Version | KvError::NoKey)
        ),
    }
}

/// [`VersionedKvModel::describe`] on borrowed parts.
pub(crate) fn describe_versioned(
    input: VersionedInputRef<'_>,
    output: Option<VersionedOutputRef<'_>>,
) -> String {
    match (input.op, output) {
        (VersionedOp::Get, Some(output)) => format!(
            "get({:?}) -> ({:?}, version {}, {})",
            input.key, output.value, output.version, output.error
        ),
        (VersionedOp::Get, None) => format!("get({:?}) -> ?", input.key),
        (VersionedOp::Put, output) => format!(
            "put({:?}, {:?}, version {}) -> {}",
            input.key,
            input.value,
            input.version,
            output.map_or("?", |output| output.error.name())
        ),
    }
}

/// [`VersionedKvModel::describe_state`] on borrowed parts.
pub(crate) fn describe_versioned_state(value: &str, version: u64) -> String {
    format!("{value:?} (version {version})")
}

/// [`VersionedKvModel::explain_illegal`] on borrowed parts; the key holds (`value`,
/// `version`).
pub(crate) fn explain_illegal_versioned(
    value: &str,
    version: u64,
    input: VersionedInputRef<'_>,
    output: Option<VersionedOutputRef<'_>>,
) -> String {
    let Some(output) = output else {
        return format!("{} is always possible", describe_versioned(input, output));
    };
    match input.op {
        VersionedOp::Get => format!(
            "get {:?} returned {:?} but the value was {value:?}",
            input.key, output.value
        ),
        VersionedOp::Put => match output.error {
            KvError::Ok => format!(
                "put {:?} with version {} answered OK but the version was {version}",
                input.key, input.version
            ),
            KvError::Version => format!(
                "put {:?} with version {} answered ErrVersion but the version was {version} (it \
                 would have succeeded)",
                input.key, input.version
            ),
            KvError::NoKey => format!(
                "put {:?} answered ErrNoKey, which the model never allows",
                input.key
            ),
            KvError::Maybe => format!(
                "put {:?} answered ErrMaybe, which is always possible",
                input.key
            ),
        },
    }
}

/// The 2025 key/value model (`models1.KvModel`): conditional Puts with versions.
#[derive(Clone, Copy, Debug, Default)]
pub struct VersionedKvModel;

impl Model for VersionedKvModel {
    type State = VersionedState;
    type Input = VersionedInput;
    type Output = VersionedOutput;

    fn init(&self) -> VersionedState {
        VersionedState::default()
    }

    fn step(
        &self,
        state: &VersionedState,
        input: &VersionedInput,
        output: Option<&VersionedOutput>,
    ) -> Option<VersionedState> {
        let output = output.map(VersionedOutput::view);
        versioned_step(&state.value, state.version, input.view(), output).map(|effect| match effect
        {
            VersionedEffect::Keep => state.clone(),
            VersionedEffect::Set(value) => VersionedState {
                value: value.to_string(),
                version: state.version + 1,
            },
        })
    }

    fn is_read_only(&self, input: &VersionedInput, output: Option<&VersionedOutput>) -> bool {
        versioned_read_only(input.view(), output.map(VersionedOutput::view))
    }

    fn partition(&self, history: &[Operation<VersionedInput, VersionedOutput>]) -> Vec<Vec<usize>> {
        partition_by_key(history, |input| &input.key)
    }

    fn describe(&self, input: &VersionedInput, output: Option<&VersionedOutput>) -> String {
        describe_versioned(input.view(), output.map(VersionedOutput::view))
    }

    fn describe_state(&self, state: &VersionedState) -> String {
        describe_versioned_state(&state.value, state.version)
    }

    fn explain_illegal(
        &self,
        state: &VersionedState,
        input: &VersionedInput,
        output: Option<&VersionedOutput>,
    ) -> String {
        let output = output.map(VersionedOutput::view);
        explain_illegal_versioned(&state.value, state.version, input.view(), output)
    }

    fn describe_partition(
        &self,
        history: &[Operation<VersionedInput, VersionedOutput>],
        group: &[usize],
    ) -> Option<String> {
        key_label(history, group, |input| &input.key)
    }
}
