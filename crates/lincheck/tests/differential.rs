//! The checker against a brute-force one on thousands of small random histories of both
//! models: they must agree on Ok versus Illegal.
//!
//! The brute force shares nothing with the checker but `Model::step`: it enumerates every
//! order of the operations consistent with real time (an operation that returned strictly
//! before another was called comes first; one that never returned may also be left out) and
//! keeps one state per key itself, so the partitioning is tested too.
//!
//! Histories come from a seeded generator: operations with random, often overlapping and
//! often equal-time intervals on one or two keys, some never returning; each gets a
//! linearization point inside its interval and the answer a correct server would give there;
//! then, in some histories, one answer is corrupted. About half end up illegal.
//!
//! The same histories, written as records, also check `history::check_records` (which uses
//! models of its own over borrowed records) against `check`: verdict and explanation must be
//! identical.
//!
//! Forced steps for read-only operations (`Model::is_read_only`) get their own histories:
//! small ones with many long, overlapping gets and puts that answer `ErrVersion` (or
//! `ErrMaybe`) against brute force, larger ones against the same checker with
//! `is_read_only` left false; and the models' `is_read_only` against their `step`.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_lincheck::history::{check_records, HistoryRecord};
use flotilla_lincheck::models::{
    KvError, KvInput, KvModel, KvOp, KvOutput, VersionedInput, VersionedKvModel, VersionedOp,
    VersionedOutput, VersionedState,
};
use flotilla_lincheck::{check, CheckResult, Model, Operation};

mod common;
use common::{Cmd, WriteOnce};

const HISTORIES_PER_MODEL: u64 = 20_000;

/// SplitMix64: enough randomness for test data, and reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Whether some order of the operations, consistent with real time, is legal; by trying them
/// all.
fn brute_force<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    key: impl Fn(&M::Input) -> &str + Copy,
) -> bool {
    fn extend<M: Model>(
        model: &M,
        history: &[Operation<M::Input, M::Output>],
        key: impl Fn(&M::Input) -> &str + Copy,
        placed: &mut Vec<bool>,
        states: &mut BTreeMap<String, M::State>,
    ) -> bool {
        let done = history
            .iter()
            .zip(placed.iter())
            .all(|(op, &placed)| placed || op.ret.is_none());
        if done {
            return true;
        }
        for next in 0..history.len() {
            if placed[next] {
                continue;
            }
            let op = &history[next];
            let must_wait = history
                .iter()
                .zip(placed.iter())
                .any(|(earlier, &placed)| !placed && earlier.ret.is_some_and(|ret| ret < op.call));
            if must_wait {
                continue;
            }
            let k = key(&op.input).to_string();
            let before = states.get(&k).cloned().unwrap_or_else(|| model.init());
            let Some(after) = model.step(&before, &op.input, op.output.as_ref()) else {
                continue;
            };
            placed[next] = true;
            states.insert(k.clone(), after);
            let found = extend(model, history, key, placed, states);
            states.insert(k, before);
            placed[next] = false;
            if found {
                return true;
            }
        }
        false
    }
    extend(
        model,
        history,
        key,
        &mut vec![false; history.len()],
        &mut BTreeMap::new(),
    )
}

/// A random operation's shape: client, key, interval (`ret` None = never returned), and
/// where inside the interval it takes effect (None = never).
struct Shape {
    client: i64,
    key: &'static str,
    call: u64,
    ret: Option<u64>,
    effect_at: Option<u64>,
}

fn shapes(rng: &mut Rng) -> Vec<Shape> {
    let count = 1 + rng.below(7) as usize;
    let keys: &[&'static str] = if rng.chance(50) { &["a"] } else { &["a", "b"] };
    shapes_of(rng, count, keys, 12, 6)
}

/// `count` shapes on `keys`, called before `calls_within`, lasting less than `longest`.
fn shapes_of(
    rng: &mut Rng,
    count: usize,
    keys: &[&'static str],
    calls_within: u64,
    longest: u64,
) -> Vec<Shape> {
    let mut shapes: Vec<Shape> = (0..count)
        .map(|_| {
            let call = rng.below(calls_within);
            let ret = (!rng.chance(20)).then(|| call + rng.below(longest));
            let effect_at = match ret {
                Some(ret) => Some(call + rng.below(ret - call + 1)),
                // A call that never returned took effect somewhere later, or never.
                None => (!rng.chance(30)).then(|| call + rng.below(8)),
            };
            Shape {
                client: rng.below(4) as i64,
                key: keys[rng.below(keys.len() as u64) as usize],
                call,
                ret,
                effect_at,
            }
        })
        .collect();
    // Index order is history order; keep it independent of the effect order.
    shapes.sort_by_key(|shape| (shape.call, shape.client));
    shapes
}

/// Indexes of the shapes that take effect, in effect order (ties broken at random).
fn effect_order(rng: &mut Rng, shapes: &[Shape]) -> Vec<usize> {
    let mut order: Vec<(u64, u64, usize)> = shapes
        .iter()
        .enumerate()
        .filter_map(|(index, shape)| shape.effect_at.map(|at| (at, rng.next(), index)))
        .collect();
    order.sort();
    order.into_iter().map(|(_, _, index)| index).collect()
}

const VALUES: &[&str] = &["x", "y", "z", "xy"];
const OUTPUTS: &[&str] = &["", "x", "y", "xy", "yx", "xx", "z"];

fn kv_history(rng: &mut Rng) -> Vec<Operation<KvInput, KvOutput>> {
    let shapes = shapes(rng);
    kv_answers(rng, shapes, |rng, key| match rng.below(3) {
        0 => KvInput::get(key),
        1 => KvInput::put(key, rng.pick(VALUES)),
        _ => KvInput::append(key, rng.pick(VALUES)),
    })
}

/// The 2024 operations of `shapes`, each input as `choose` picks it for the shape's key,
/// with a correct server's answers at the effect points; half the histories have one answer
/// corrupted.
fn kv_answers(
    rng: &mut Rng,
    shapes: Vec<Shape>,
    choose: impl Fn(&mut Rng, &'static str) -> KvInput,
) -> Vec<Operation<KvInput, KvOutput>> {
    let mut history: Vec<Operation<KvInput, KvOutput>> = shapes
        .iter()
        .map(|shape| {
            let input = choose(rng, shape.key);
            Operation {
                client: shape.client,
                input,
                output: None,
                call: shape.call,
                ret: shape.ret,
            }
        })
        .collect();
    // A correct server, at the effect points.
    let mut store: BTreeMap<&str, String> = BTreeMap::new();
    for index in effect_order(rng, &shapes) {
        let op = &mut history[index];
        let value = store.entry(shapes[index].key).or_default();
        let answer = value.clone();
        match op.input.op {
            KvOp::Get => {}
            KvOp::Put => *value = op.input.value.clone(),
            KvOp::Append => value.push_str(&op.input.value),
        }
        if op.ret.is_some() {
            op.output = Some(KvOutput::new(match op.input.op {
                KvOp::Put => String::new(),
                _ => answer,
            }));
        }
    }
    if rng.chance(50) {
        corrupt(rng, &mut history, |rng, op| {
            op.output = Some(KvOutput::new(rng.pick(OUTPUTS)));
        });
    }
    history
}

fn versioned_history(rng: &mut Rng) -> Vec<Operation<VersionedInput, VersionedOutput>> {
    let shapes = shapes(rng);
    versioned_answers(rng, shapes, |rng, key| match rng.below(2) {
        0 => VersionedInput::get(key),
        _ => VersionedInput::put(key, rng.pick(VALUES), rng.below(3)),
    })
}

/// A history with many concurrent read-only operations: up to 8 operations on one key
/// (sometimes two), long and overlapping, mostly gets and puts at versions that rarely
/// match (so most answer `ErrVersion`), some answering `ErrMaybe`, sometimes one answer
/// corrupted.
fn versioned_read_heavy_history(rng: &mut Rng) -> Vec<Operation<VersionedInput, VersionedOutput>> {
    let count = 2 + rng.below(7) as usize;
    let keys: &[&'static str] = if rng.chance(80) { &["a"] } else { &["a", "b"] };
    let shapes = shapes_of(rng, count, keys, 10, 10);
    versioned_answers(rng, shapes, |rng, key| match rng.below(5) {
        0 | 1 => VersionedInput::get(key),
        _ => VersionedInput::put(key, rng.pick(VALUES), rng.below(2)),
    })
}

/// Larger histories of the same kind, for the comparison of the checker with and without
/// forced steps (too large for brute force).
fn versioned_large_history(rng: &mut Rng) -> Vec<Operation<VersionedInput, VersionedOutput>> {
    let count = 10 + rng.below(15) as usize;
    let shapes = shapes_of(rng, count, &["a"], 40, 12);
    versioned_answers(rng, shapes, |rng, key| match rng.below(5) {
        0 | 1 => VersionedInput::get(key),
        _ => VersionedInput::put(key, rng.pick(VALUES), rng.below(3)),
    })
}

/// The 2025 operations of `shapes`, each input as `choose` picks it for the shape's key,
/// with a correct server's answers at the effect points; then some puts answer `ErrMaybe`,
/// and half the histories have one answer corrupted.
fn versioned_answers(
    rng: &mut Rng,
    shapes: Vec<Shape>,
    choose: impl Fn(&mut Rng, &'static str) -> VersionedInput,
) -> Vec<Operation<VersionedInput, VersionedOutput>> {
    let mut history: Vec<Operation<VersionedInput, VersionedOutput>> = shapes
        .iter()
        .map(|shape| {
            let input = choose(rng, shape.key);
            Operation {
                client: shape.client,
                input,
                output: None,
                call: shape.call,
                ret: shape.ret,
            }
        })
        .collect();
    let mut store: BTreeMap<&str, VersionedState> = BTreeMap::new();
    for index in effect_order(rng, &shapes) {
        let op = &mut history[index];
        let state = store.entry(shapes[index].key).or_default();
        let output = match op.input.op {
            VersionedOp::Get => {
                let error = if state.version == 0 {
                    KvError::NoKey
                } else {
                    KvError::Ok
                };
                VersionedOutput::get(state.value.clone(), state.version, error)
            }
            VersionedOp::Put if op.input.version == state.version => {
                state.value = op.input.value.clone();
                state.version += 1;
                VersionedOutput::put(KvError::Ok)
            }
            VersionedOp::Put => VersionedOutput::put(KvError::Version),
        };
        if op.ret.is_some() {
            op.output = Some(output);
        }
    }
    // A completed put that took effect nowhere: a clerk whose answer was ErrMaybe.
    for (op, shape) in history.iter_mut().zip(&shapes) {
        if op.ret.is_some() && op.output.is_none() {
            op.output = Some(VersionedOutput::put(KvError::Maybe));
            debug_assert!(shape.effect_at.is_none());
        }
    }
    for op in history.iter_mut() {
        let is_put = op.input.op == VersionedOp::Put;
        if let Some(output) = op.output.as_mut().filter(|_| is_put && rng.chance(10)) {
            output.error = KvError::Maybe;
        }
    }
    if rng.chance(50) {
        corrupt(rng, &mut history, |rng, op| match op.input.op {
            VersionedOp::Get => {
                op.output = Some(VersionedOutput::get(
                    rng.pick(OUTPUTS),
                    rng.below(3),
                    KvError::Ok,
                ))
            }
            VersionedOp::Put => {
                let errors = [
                    KvError::Ok,
                    KvError::Version,
                    KvError::NoKey,
                    KvError::Maybe,
                ];
                op.output = Some(VersionedOutput::put(errors[rng.below(4) as usize]));
            }
        });
    }
    history
}

/// 2024 histories with many concurrent reads: up to 8 operations on one key, long and
/// overlapping, three in four of them gets.
fn kv_read_heavy_history(rng: &mut Rng) -> Vec<Operation<KvInput, KvOutput>> {
    let count = 2 + rng.below(7) as usize;
    let shapes = shapes_of(rng, count, &["a"], 10, 10);
    kv_answers(rng, shapes, |rng, key| match rng.below(8) {
        0 => KvInput::put(key, rng.pick(VALUES)),
        1 => KvInput::append(key, rng.pick(VALUES)),
        _ => KvInput::get(key),
    })
}

fn write_once_history(rng: &mut Rng) -> Vec<Operation<Cmd, Option<u8>>> {
    let shapes = shapes(rng);
    let mut history: Vec<Operation<Cmd, Option<u8>>> = shapes
        .iter()
        .map(|shape| Operation {
            client: shape.client,
            input: match rng.below(2) {
                0 => Cmd::Read,
                _ => Cmd::Write(1 + rng.below(3) as u8),
            },
            output: None,
            call: shape.call,
            ret: shape.ret,
        })
        .collect();
    let mut register = None;
    for index in effect_order(rng, &shapes) {
        let op = &mut history[index];
        match op.input {
            Cmd::Read => op.output = op.ret.map(|_| register),
            Cmd::Write(value) => {
                // A write to a written register: its caller sees the failure (and then the
                // history is illegal), unless it never returned.
                op.output = op.ret.map(|_| register);
                register = register.or(Some(value));
            }
        }
    }
    for op in history.iter_mut().filter(|op| op.ret.is_some()) {
        op.output.get_or_insert(None);
    }
    if rng.chance(30) {
        corrupt(rng, &mut history, |rng, op| {
            op.output = Some([None, Some(1), Some(2)][rng.below(3) as usize]);
        });
    }
    history
}

/// `M` with [`Model::is_read_only`] left at its default (false): the checker without forced
/// steps, which tries read-only operations in every order.
struct Unpruned<M>(M);

impl<M: Model> Model for Unpruned<M> {
    type State = M::State;
    type Input = M::Input;
    type Output = M::Output;

    fn init(&self) -> M::State {
        self.0.init()
    }

    fn step(
        &self,
        state: &M::State,
        input: &M::Input,
        output: Option<&M::Output>,
    ) -> Option<M::State> {
        self.0.step(state, input, output)
    }

    fn partition(&self, history: &[Operation<M::Input, M::Output>]) -> Vec<Vec<usize>> {
        self.0.partition(history)
    }

    fn describe(&self, input: &M::Input, output: Option<&M::Output>) -> String {
        self.0.describe(input, output)
    }

    fn describe_state(&self, state: &M::State) -> String {
        self.0.describe_state(state)
    }

    fn explain_illegal(
        &self,
        state: &M::State,
        input: &M::Input,
        output: Option<&M::Output>,
    ) -> String {
        self.0.explain_illegal(state, input, output)
    }

    fn describe_partition(
        &self,
        history: &[Operation<M::Input, M::Output>],
        group: &[usize],
    ) -> Option<String> {
        self.0.describe_partition(history, group)
    }
}

/// Changes the answer of one operation that returned, if there is one.
fn corrupt<I, O>(
    rng: &mut Rng,
    history: &mut [Operation<I, O>],
    change: impl Fn(&mut Rng, &mut Operation<I, O>),
) {
    let returned: Vec<usize> = (0..history.len())
        .filter(|&index| history[index].ret.is_some())
        .collect();
    if !returned.is_empty() {
        let index = returned[rng.below(returned.len() as u64) as usize];
        change(rng, &mut history[index]);
    }
}

/// Checks `HISTORIES_PER_MODEL` histories both ways; returns (legal, illegal) counts.
fn compare<M: Model>(
    model: &M,
    seed: u64,
    generate: impl Fn(&mut Rng) -> Vec<Operation<M::Input, M::Output>>,
    key: impl Fn(&M::Input) -> &str + Copy,
) -> (u64, u64) {
    let (mut legal, mut illegal) = (0, 0);
    for case in 0..HISTORIES_PER_MODEL {
        let mut rng = Rng(seed ^ case.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let history = generate(&mut rng);
        let expected = brute_force(model, &history, key);
        let result = check(model, &history, Duration::from_secs(60));
        match (&result, expected) {
            (CheckResult::Ok, true) => legal += 1,
            (CheckResult::Illegal(explanation), false) => {
                illegal += 1;
                // The explanation is consistent with the history it explains.
                assert!(
                    !explanation.blocked.is_empty(),
                    "case {case}: {explanation}"
                );
                assert!(explanation.prefix.len() < explanation.partition_size);
            }
            _ => panic!(
                "case {case}: checker says {result:?}, brute force says linearizable = \
                 {expected}\n{history:#?}"
            ),
        }
    }
    (legal, illegal)
}

/// Both outcomes must be common, or the comparison proves little.
fn assert_balanced(name: &str, (legal, illegal): (u64, u64)) {
    let total = legal + illegal;
    eprintln!("{name}: {legal} legal, {illegal} illegal");
    assert!(
        legal * 5 > total && illegal * 5 > total,
        "{name}: {legal} legal and {illegal} illegal histories; the generator is lopsided"
    );
}

#[test]
fn kv_model_agrees_with_brute_force() {
    let counts = compare(&KvModel, 0x6b76, kv_history, |input: &KvInput| {
        input.key.as_str()
    });
    assert_balanced("KvModel", counts);
}

#[test]
fn pending_operations_left_out_agree_with_brute_force() {
    let counts = compare(&WriteOnce, 0x776f, write_once_history, |_: &Cmd| "");
    assert_balanced("WriteOnce", counts);
}

#[test]
fn versioned_model_agrees_with_brute_force() {
    let counts = compare(
        &VersionedKvModel,
        0x7632,
        versioned_history,
        |input: &VersionedInput| input.key.as_str(),
    );
    assert_balanced("VersionedKvModel", counts);
}

#[test]
fn checking_records_agrees_exactly_with_checking_operations() {
    let budget = Duration::from_secs(60);
    let (mut kv_illegal, mut versioned_illegal) = (0, 0);
    for case in 0..HISTORIES_PER_MODEL / 2 {
        let mut rng = Rng(0x7265 ^ case.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let history = kv_history(&mut rng);
        let records: Vec<HistoryRecord> = history.iter().map(HistoryRecord::from).collect();
        let result = check(&KvModel, &history, budget);
        kv_illegal += u64::from(result.is_illegal());
        assert_eq!(
            check_records(&records, budget).unwrap(),
            result,
            "case {case}: {history:#?}"
        );

        let history = versioned_history(&mut rng);
        let records: Vec<HistoryRecord> = history.iter().map(HistoryRecord::from).collect();
        let result = check(&VersionedKvModel, &history, budget);
        versioned_illegal += u64::from(result.is_illegal());
        assert_eq!(
            check_records(&records, budget).unwrap(),
            result,
            "case {case}: {history:#?}"
        );
    }
    // Explanations were compared too, not only verdicts.
    assert!(kv_illegal > HISTORIES_PER_MODEL / 10 && versioned_illegal > HISTORIES_PER_MODEL / 10);
}

#[test]
fn kv_model_with_many_concurrent_reads_agrees_with_brute_force() {
    let counts = compare(
        &KvModel,
        0x6b72,
        kv_read_heavy_history,
        |input: &KvInput| input.key.as_str(),
    );
    assert_balanced("KvModel, read-heavy", counts);
}

#[test]
fn versioned_model_with_many_concurrent_failed_puts_agrees_with_brute_force() {
    let counts = compare(
        &VersionedKvModel,
        0x7672,
        versioned_read_heavy_history,
        |input: &VersionedInput| input.key.as_str(),
    );
    assert_balanced("VersionedKvModel, read-heavy", counts);
}

/// On histories too large for brute force, the checker with forced steps against itself
/// without them (the same search, trying every order): the same verdicts.
#[test]
fn forced_steps_change_no_verdict_on_larger_histories() {
    let budget = Duration::from_secs(60);
    let (mut legal, mut illegal) = (0, 0);
    for case in 0..HISTORIES_PER_MODEL / 10 {
        let mut rng = Rng(0x6c72 ^ case.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let history = versioned_large_history(&mut rng);
        let result = check(&VersionedKvModel, &history, budget);
        let unpruned = check(&Unpruned(VersionedKvModel), &history, budget);
        assert!(
            !result.is_unknown() && !unpruned.is_unknown(),
            "case {case}"
        );
        assert_eq!(
            result.is_ok(),
            unpruned.is_ok(),
            "case {case}: with forced steps {result:?}, without {unpruned:?}\n{history:#?}"
        );
        if let CheckResult::Illegal(explanation) = &result {
            assert!(
                !explanation.blocked.is_empty(),
                "case {case}: {explanation}"
            );
            assert!(explanation.prefix.len() < explanation.partition_size);
        }
        legal += u64::from(result.is_ok());
        illegal += u64::from(result.is_illegal());
    }
    assert_balanced(
        "VersionedKvModel, larger, with and without forced steps",
        (legal, illegal),
    );
}

/// What `Model::is_read_only` promises, for every operation of both models that it says is
/// read-only, in every state built from the generators' values: impossible, or possible
/// with the state unchanged.
#[test]
fn read_only_operations_never_change_the_state() {
    let mut values: Vec<&str> = VALUES.iter().chain(OUTPUTS).copied().collect();
    values.sort();
    values.dedup();

    let mut read_only = 0;
    let kv_inputs = values.iter().flat_map(|&value| {
        [
            KvInput::get("a"),
            KvInput::put("a", value),
            KvInput::append("a", value),
        ]
    });
    for input in kv_inputs {
        let outputs = values.iter().map(|&value| Some(KvOutput::new(value)));
        for output in outputs.chain([None]) {
            if !KvModel.is_read_only(&input, output.as_ref()) {
                continue;
            }
            read_only += 1;
            for &state in &values {
                let state = state.to_string();
                if let Some(after) = KvModel.step(&state, &input, output.as_ref()) {
                    assert_eq!(after, state, "{input:?} -> {output:?}");
                }
            }
        }
    }

    let states: Vec<VersionedState> = values
        .iter()
        .flat_map(|&value| {
            (0..4).map(move |version| VersionedState {
                value: value.to_string(),
                version,
            })
        })
        .collect();
    let errors = [
        KvError::Ok,
        KvError::NoKey,
        KvError::Version,
        KvError::Maybe,
    ];
    let versioned_inputs = values.iter().flat_map(|&value| {
        (0..4)
            .map(move |version| VersionedInput::put("a", value, version))
            .chain([VersionedInput::get("a")])
    });
    for input in versioned_inputs {
        let outputs = values.iter().flat_map(|&value| {
            errors.into_iter().flat_map(move |error| {
                (0..4).map(move |version| Some(VersionedOutput::get(value, version, error)))
            })
        });
        for output in outputs.chain([None]) {
            if !VersionedKvModel.is_read_only(&input, output.as_ref()) {
                continue;
            }
            read_only += 1;
            for state in &states {
                if let Some(after) = VersionedKvModel.step(state, &input, output.as_ref()) {
                    assert_eq!(after, *state, "{input:?} -> {output:?}");
                }
            }
        }
    }
    assert!(read_only > 1_000);

    // And what it says of each kind of operation.
    let put = VersionedInput::put("a", "x", 1);
    let put_answered =
        |error| VersionedKvModel.is_read_only(&put, Some(&VersionedOutput::put(error)));
    assert!(put_answered(KvError::Version) && put_answered(KvError::NoKey));
    assert!(!put_answered(KvError::Ok) && !put_answered(KvError::Maybe));
    assert!(!VersionedKvModel.is_read_only(&put, None));
    assert!(VersionedKvModel.is_read_only(&VersionedInput::get("a"), None));
    assert!(KvModel.is_read_only(&KvInput::get("a"), None));
    assert!(!KvModel.is_read_only(&KvInput::put("a", "x"), Some(&KvOutput::new(""))));
    assert!(!KvModel.is_read_only(&KvInput::append("a", "x"), Some(&KvOutput::new(""))));
}
