//! How long `check` takes on a lab-sized history: 10 000 operations over 10 keys from 5
//! concurrent clients (each client issues its next call when the previous one returns).
//!
//! ```sh
//! cargo run --release -p flotilla-lincheck --example check_speed
//! ```
//!
//! It prints the time for a correct history and for the same history with one read answering
//! a value it cannot have seen, with each model. Then two shapes of the long histories the
//! simulator writes, each timed with `check` and with `history::check_records` (what
//! `flotilla check FILE` runs):
//!
//! - growing appends: 60 000 operations on 5 keys, one client per key calling back to back
//!   (each call at the instant the previous one returned, so consecutive operations overlap
//!   by the tie rule: harder for the checker than the simulator's histories now are, whose
//!   stamps put each call strictly after the return before it), gets and appends whose
//!   values grow to about 20 KB;
//! - racing puts: 40 000 operations on one key, 10 clients each getting the value and then
//!   putting a new one conditional on the version they got.
//!
//! A measurement to read, not a test: nothing is asserted about time.

use std::time::{Duration, Instant};

use flotilla_lincheck::history::{check_records, HistoryRecord};
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

/// Growing appends (see the module documentation): 5 keys, one client each, back to back.
fn growing_appends_history(rng: &mut Rng) -> Vec<Operation<KvInput, KvOutput>> {
    const OPERATIONS: usize = 60_000;
    const KEYS: usize = 5;
    // A key is emptied by a put every so many of its operations, so values stay near 20 KB.
    const PUT_EVERY: usize = 3_000;
    let mut clock = [0u64; KEYS];
    let mut values = vec![String::new(); KEYS];
    let mut history = Vec::with_capacity(OPERATIONS);
    for i in 0..OPERATIONS {
        let key = i % KEYS;
        let round = i / KEYS;
        let value = &mut values[key];
        let (input, output) = if round.is_multiple_of(PUT_EVERY) {
            value.clear();
            (KvInput::put(key.to_string(), ""), KvOutput::new(""))
        } else if rng.below(2) == 0 {
            (KvInput::get(key.to_string()), KvOutput::new(value.as_str()))
        } else {
            let appended = format!("x {key} {round} y");
            let output = KvOutput::new(value.as_str());
            value.push_str(&appended);
            (KvInput::append(key.to_string(), appended), output)
        };
        let call = clock[key];
        let ret = call + 100_000 + rng.below(200_000);
        clock[key] = ret;
        history.push(Operation {
            client: key as i64,
            input,
            output: Some(output),
            call,
            ret: Some(ret),
        });
    }
    history
}

/// Racing puts (see the module documentation): 10 clients on one key, back to back, each
/// alternating a put conditional on the last version it saw and a get.
fn racing_puts_history(rng: &mut Rng) -> Vec<Operation<VersionedInput, VersionedOutput>> {
    const OPERATIONS: usize = 40_000;
    const CLIENTS: usize = 10;
    let mut clock = [0u64; CLIENTS];
    let mut history = Vec::with_capacity(OPERATIONS);
    let mut effects = Vec::with_capacity(OPERATIONS);
    for i in 0..OPERATIONS {
        let client = i % CLIENTS;
        let input = if (i / CLIENTS).is_multiple_of(2) {
            VersionedInput::put("k", String::new(), 0)
        } else {
            VersionedInput::get("k")
        };
        let call = clock[client];
        let ret = call + 100_000 + rng.below(200_000);
        clock[client] = ret;
        effects.push((call + rng.below(ret - call + 1), i));
        history.push(Operation {
            client: client as i64,
            input,
            output: None,
            call,
            ret: Some(ret),
        });
    }
    // A correct server, at the effect points; a put is conditional on the version its client
    // last got (its get took effect before the put was called).
    effects.sort();
    let mut state = VersionedState::default();
    let mut seen = [0u64; CLIENTS];
    for (_, i) in effects {
        let client = i % CLIENTS;
        let op = &mut history[i];
        op.output = Some(match op.input.op {
            VersionedOp::Get => {
                seen[client] = state.version;
                VersionedOutput::get(state.value.clone(), state.version, KvError::Ok)
            }
            VersionedOp::Put => {
                op.input.version = seen[client];
                op.input.value = format!("{{\"Id\":{client},\"V\":{}}}", seen[client]);
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

fn verdict(result: &CheckResult) -> &'static str {
    match result {
        CheckResult::Ok => "Ok",
        CheckResult::Illegal(_) => "Illegal",
        CheckResult::Unknown => "Unknown",
    }
}

fn time<M: Model>(name: &str, model: &M, history: &[Operation<M::Input, M::Output>]) {
    let started = Instant::now();
    let result = check(model, history, Duration::from_secs(60));
    let verdict = verdict(&result);
    println!("{name:<40} {verdict:<8} {:>10.1?}", started.elapsed());
}

fn time_records(name: &str, records: &[HistoryRecord]) {
    let started = Instant::now();
    let result = check_records(records, Duration::from_secs(60)).expect("valid records");
    let verdict = verdict(&result);
    println!("{name:<40} {verdict:<8} {:>10.1?}", started.elapsed());
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

    println!();
    let history = growing_appends_history(&mut rng);
    let longest = history
        .iter()
        .filter_map(|op| op.output.as_ref())
        .map(|output| output.value.len())
        .max()
        .unwrap_or(0);
    println!(
        "growing appends: {} operations, 5 keys, values up to {longest} bytes",
        history.len()
    );
    time("KvModel, check", &KvModel, &history);
    let records: Vec<HistoryRecord> = history.iter().map(HistoryRecord::from).collect();
    drop(history);
    time_records("KvModel, check_records", &records);
    drop(records);

    let history = racing_puts_history(&mut rng);
    let puts_ok = history
        .iter()
        .filter(|op| op.input.op == VersionedOp::Put)
        .filter(|op| op.output.as_ref().is_some_and(|o| o.error == KvError::Ok))
        .count();
    println!(
        "racing puts: {} operations, 1 key, 10 clients, {puts_ok} puts succeed",
        history.len()
    );
    time("VersionedKvModel, check", &VersionedKvModel, &history);
    let records: Vec<HistoryRecord> = history.iter().map(HistoryRecord::from).collect();
    time_records("VersionedKvModel, check_records", &records);
}
