//! How long `check` takes on a lab-sized history: 10 000 operations over 10 keys from 5
//! concurrent clients (each client issues its next call when the previous one returns).
//!
//! ```sh
//! cargo run --release -p flotilla-lincheck --example check_speed
//! ```
//!
//! It prints the time for a correct history and for the same history with one read answering
//! a value it cannot have seen, with each model. A measurement to read, not a test: nothing is
//! asserted about time.

use std::time::{Duration, Instant};

use flotilla_lincheck::models::{
    KvError, KvInput, KvModel, KvOp, KvOutput, VersionedInput, VersionedKvModel, VersionedOp,
    VersionedOutput, VersionedState,
};
use flotilla_lincheck::{check, CheckResult, Model, Operation};

const OPERATIONS: usize = 10_000;
const KEYS: u64 = 10;
const CLIENTS: u64 = 5;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// (client, key, call, return, effect point) for every operation, clients back to back.
fn timeline(rng: &mut Rng) -> Vec<(i64, String, u64, u64, u64)> {
    let mut ops = Vec::with_capacity(OPERATIONS);
    let mut clock = [0u64; CLIENTS as usize];
    for i in 0..OPERATIONS {
        let client = i % CLIENTS as usize;
        let call = clock[client] + rng.below(3);
        let ret = call + 1 + rng.below(100);
        let effect = call + rng.below(ret - call + 1);
        clock[client] = ret;
        ops.push((
            client as i64,
            format!("k{}", rng.below(KEYS)),
            call,
            ret,
            effect,
        ));
    }
    ops
}

/// Effect order: indexes of `timeline` sorted by effect point.
fn effect_order(timeline: &[(i64, String, u64, u64, u64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..timeline.len()).collect();
    order.sort_by_key(|&i| (timeline[i].4, i));
    order
}

/// The 2024 lab mix: half appends (returning the old value), half gets.
fn kv_history(rng: &mut Rng) -> Vec<Operation<KvInput, KvOutput>> {
    let timeline = timeline(rng);
    let mut history: Vec<_> = timeline
        .iter()
        .enumerate()
        .map(|(i, (client, key, call, ret, _))| Operation {
            client: *client,
            input: if rng.below(2) == 0 {
                KvInput::get(key.as_str())
            } else {
                KvInput::append(key.as_str(), format!("x {client} {i} y"))
            },
            output: None,
            call: *call,
            ret: Some(*ret),
        })
        .collect();
    let mut store = std::collections::HashMap::<String, String>::new();
    for i in effect_order(&timeline) {
        let op = &mut history[i];
        let value = store.entry(op.input.key.clone()).or_default();
        op.output = Some(KvOutput::new(value.as_str()));
        if op.input.op == KvOp::Append {
            value.push_str(&op.input.value);
        }
    }
    history
}

/// The 2025 mix: conditional puts (a client puts with the version it last saw) and gets.
fn versioned_history(rng: &mut Rng) -> Vec<Operation<VersionedInput, VersionedOutput>> {
    let timeline = timeline(rng);
    let mut history: Vec<_> = timeline
        .iter()
        .enumerate()
        .map(|(i, (client, key, call, ret, _))| Operation {
            client: *client,
            input: if rng.below(2) == 0 {
                VersionedInput::get(key.as_str())
            } else {
                VersionedInput::put(key.as_str(), format!("v{i}"), 0)
            },
            output: None,
            call: *call,
            ret: Some(*ret),
        })
        .collect();
    let mut store = std::collections::HashMap::<String, VersionedState>::new();
    for i in effect_order(&timeline) {
        let op = &mut history[i];
        let state = store.entry(op.input.key.clone()).or_default();
        op.output = Some(match op.input.op {
            VersionedOp::Get => {
                VersionedOutput::get(state.value.clone(), state.version, KvError::Ok)
            }
            VersionedOp::Put => {
                // Usually the current version (as after a Get), sometimes a stale one.
                op.input.version = state.version.saturating_sub(rng.below(2));
                if op.input.version == state.version {
                    state.value = op.input.value.clone();
                    state.version += 1;
                    VersionedOutput::put(KvError::Ok)
                } else {
                    VersionedOutput::put(KvError::Version)
                }
            }
        });
    }
    history
}

fn time<M: Model>(name: &str, model: &M, history: &[Operation<M::Input, M::Output>]) {
    let started = Instant::now();
    let result = check(model, history, Duration::from_secs(60));
    let verdict = match result {
        CheckResult::Ok => "Ok",
        CheckResult::Illegal(_) => "Illegal",
        CheckResult::Unknown => "Unknown",
    };
    println!("{name:<32} {verdict:<8} {:>10.1?}", started.elapsed());
}

fn main() {
    println!("{OPERATIONS} operations, {KEYS} keys, {CLIENTS} concurrent clients");
    let mut rng = Rng(2024);
    let mut history = kv_history(&mut rng);
    time("KvModel, correct", &KvModel, &history);
    // The last read that saw a value sees the empty one instead.
    let last_get = history
        .iter()
        .rposition(|op| {
            op.input.op == KvOp::Get && op.output.as_ref().is_some_and(|o| !o.value.is_empty())
        })
        .expect("some get read a value");
    history[last_get].output = Some(KvOutput::new(""));
    time("KvModel, one wrong read", &KvModel, &history);

    let mut history = versioned_history(&mut rng);
    time("VersionedKvModel, correct", &VersionedKvModel, &history);
    let last_get = history
        .iter()
        .rposition(|op| {
            op.input.op == VersionedOp::Get && op.output.as_ref().is_some_and(|o| o.version > 1)
        })
        .expect("some get read a written value");
    history[last_get].output = Some(VersionedOutput::get("never written", 1, KvError::Ok));
    time(
        "VersionedKvModel, one wrong read",
        &VersionedKvModel,
        &history,
    );
}
